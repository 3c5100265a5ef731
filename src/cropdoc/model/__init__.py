"""The networks, in torch: timm architectures (``archs``), starting weights, the device and
precision, building a network from a bundle (``build``), the MIL wrapper and bags of tiles
for tiled models, and the modules that score photos whole or tile by tile (``scoring``,
``tiled``)."""
