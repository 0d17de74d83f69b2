"""Guest architectures of the translation engine, one package each."""
