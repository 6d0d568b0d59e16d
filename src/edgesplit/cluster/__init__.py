"""The cluster: emulated devices (CPU shares, processes, hosts), faults, certificates, doctor."""
