"""The application: a run's stage choice and execution settings (the jobs join here, issue #16)."""
