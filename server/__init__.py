"""The stepwatch server: the monitored sampling engine, the built-in model and the service."""
