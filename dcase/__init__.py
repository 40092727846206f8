"""dcase: complete DCASE2024 Task 6 / Task 8 submissions following EnCLAP (Kim et al., ICASSP 2024) and its
DCASE2024 extension (technical report): DAC codes + CNext clip embedding -> BART captioner with masked codec
modeling; CNext + text-encoder retrievers trained with m-LTM; sampling, fluency filtering and reranking."""

__version__ = "0.1.0"
