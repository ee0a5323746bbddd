"""What every phase of the pipeline uses and no phase owns: file I/O, the config, the compute device."""
