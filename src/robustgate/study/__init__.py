"""Studies run as experiments, on the pipeline's pieces: the noise-augmentation study."""
