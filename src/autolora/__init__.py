"""autolora: AutoLoRA guidance, evaluation and experiments for LoRA-personalised diffusion models."""

__version__ = "0.1.0"
