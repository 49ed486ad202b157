"""Pretraining a CT-CLIP of our own (``pretrain-ctclip``) and scoring it zero-shot; the demo's teacher."""
