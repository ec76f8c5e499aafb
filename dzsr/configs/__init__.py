"""YAML training presets (package data): nikon_x4, nikon_x4_losw, camerafusion_x2, sample_x4."""
