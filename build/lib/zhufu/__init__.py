"""Zhufu (祝福): manufacture blessing fine-tuning data with an LLM and train a chat model on it."""

__version__ = "0.1.0"
