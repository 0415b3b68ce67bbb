"""The train verb: fine-tune a causal LM into the prompt optimizer (prompt -> optimized prompt).

`tokenize` turns pairs into masked training examples (a Ray Data step) and pads batches;
`deepspeed_config` builds the DeepSpeed config from typed settings.
"""
