"""The tiny pipeline builders live in ``autolora.testing``; this name keeps older test modules importing."""

from autolora.testing import KINDS, random_lora_file, random_lora_state_dict, tiny_pipeline

__all__ = ["KINDS", "random_lora_file", "random_lora_state_dict", "tiny_pipeline"]
