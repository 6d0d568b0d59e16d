"""Planning: the profile (schema, cost model, measurement), the planner, stages, precision."""
