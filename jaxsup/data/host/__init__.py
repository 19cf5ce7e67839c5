"""Host ops (numpy / Pillow / libjpeg-turbo, per example, in the grain workers): decode, crops, resize, RandAugment, captions."""
