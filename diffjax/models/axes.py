"""Logical axis names of weights and activations.

Modules annotate their params with these names (`nn.with_logical_partitioning`) and the
rule table in `diffjax.sharding` (or a config's) maps them to the mesh axes ('data',
'fsdp', 'tensor'), so a new layout is a config change, not a model change. They live in
their own module so that the rules can name them without importing model code.
"""

BATCH = "activation_batch"
LENGTH = "activation_length"
EMBED = "embed"          # model width (d_model / channels of a projection's input)
HEADS = "heads"          # fused heads*head_dim output of q/k/v, input of the out projection
MLP = "mlp"              # hidden width of feed-forward blocks
VOCAB = "vocab"          # token table rows
CONV_IN = "conv_in"      # input channels of a convolution
CONV_OUT = "conv_out"    # output channels of a convolution
NORM = "norm"            # scales/biases of normalisation layers (replicated)
POSITION = "position"    # position-embedding rows (replicated)
