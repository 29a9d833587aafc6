"""The LLM-Merging scaffold: merge methods are `Merges` subclasses registered as entry points
in the group `llm_merging.merging.Merges` and run with `python main.py -m NAME`."""
