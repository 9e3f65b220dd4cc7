"""The miniature world: a tiny, real text-to-image pipeline with its LoRAs and evaluators."""
