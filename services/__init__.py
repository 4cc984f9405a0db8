"""The four stream processors. Each subpackage keeps its logic in plain, typed functions
(`logic.py`) and a thin faust agent (`agent.py`)."""
