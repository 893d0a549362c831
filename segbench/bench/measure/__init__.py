"""What the review and ``segbench speed`` measure besides accuracy, each by one producer:

- ``timing``: the one timing harness (interleaved contenders, warm-up until stable, median and IQR);
- ``flops``: parameters and FLOPs (``FlopCounterMode`` on the meta device);
- ``cost``: a model's size, compute, batch-1 latency and peak memory, and the machine;
- ``speed``: training step and inference against a peer implementation and the machine's matmul rate;
- ``input_pipeline``: the input pipeline's and the metrics' share of an epoch;
- ``peers``: the peer implementations (Hugging Face, torchvision, smp) where installed;
- ``op_profile``: a training step's time by kind of operator (``--breakdown``).
"""
