"""Cascaded discrete diffusion training: model, noise, objectives, trainer (`python -m train --help`)."""
