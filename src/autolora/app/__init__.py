"""``autolora app``: a local web app that shows base CFG, LoRA+CFG and AutoLoRA side by side.

``engine`` holds what the app does (LoRAs, checked requests, images with their parameters, metrics) and
imports no web framework; ``ui`` is the Gradio page on top of it.
"""
