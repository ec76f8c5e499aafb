"""YAML training presets (package data): nikon_x4, camerafusion_x2, sample_x4."""
