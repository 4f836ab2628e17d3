"""Generation from a trained model: sampling, beam search, and encoder-decoder decoding."""
