"""Whole field photos at full resolution: tiles cut at native resolution, a timm model run
on each, and multiple-instance pooling of the tiles' answers into the photo's answer."""
