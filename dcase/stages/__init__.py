"""Stage orchestration: each module runs one stage of the chain from its input files to its output files
(captioner and retriever training, candidate generation, the demo; see ARCHITECTURE.md)."""
