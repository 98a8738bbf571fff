"""The stepwatch wire protocol, sans I/O."""
