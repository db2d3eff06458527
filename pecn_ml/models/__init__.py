"""Model construction only (PAC-Net, InstructPix2Pix, tiny local presets)."""
