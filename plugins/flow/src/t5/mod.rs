//! The T5 v1.1 encoder (T5-XXL in SD3 and Flux; transformers `T5EncoderModel`) and its tokenizer.
