"""Using the tuned model (rules/evaluate.smk and user commands): evaluate, chat, serve a web demo.

torch and transformers are imported where a model is loaded or run (`chat`): they take seconds to import.
"""
