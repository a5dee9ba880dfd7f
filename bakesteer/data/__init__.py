"""Shipped prompt sets (refusal and sentiment pairs, eval and demo prompts) and the reference text."""
