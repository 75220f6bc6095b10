"""The library cells, one module per family:

base       their shared base (checked sizes, the repr, checked params, a zero state) and
           the maps their steps use, `affine`, `affine_blocks` and `by_heads`
classic    RNN, LSTM, GRU (reset after the matmul), GRUv3 (reset before), MGU, on one base
variants   peephole, projected and LayerNorm LSTMs, IndRNN: the classic cells' step hooks
linear     cells linear in their state (`LinearRecurrence`): minGRU, minLSTM, LRU
ssm        RG-LRU and Mamba's selective SSM (S6), linear cells with gated inputs
xlstm      xLSTM's sLSTM (scalar memory) and mLSTM (matrix memory)
memories   matrix memories without a normaliser: RetNet's retention, Mamba-2's SSD
           core, gated linear attention (GLA)
delta      the delta rule's matrix memories: DeltaNet, Gated DeltaNet
conv       convolutional LSTM and GRU over 1, 2 or 3 spatial axes
blocks     the parts of `rj.mamba_block`: a causal convolution with its past inputs as
           state, a linear cell on some features passing the others, Mamba's gate

Each module imports from the contracts, checks, initialisers and state types below it, from
`base`, and from the family it extends; nothing in the engine imports a cell class.
"""
