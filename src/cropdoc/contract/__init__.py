"""What the stages agree on, torch-free: the bundle's metadata (``model.json``), a
multi-target model's targets, the tile grid, calibration and out-of-scope maths, their
reliability report, the photo-quality checks. Every runtime reads these; torch is only
imported inside the few functions that write or score tensors."""
