"""Assets, one module per area: data, progress (PAC-Net), pix2pix, evaluation."""
