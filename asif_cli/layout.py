"""Where the commands sit: the product verbs at the top level, evaluation and research
commands in two groups."""

# Evaluation and research commands live under two groups; their old top-level names keep
# working for one release, hidden from the help, with a one-line note.
GROUPS = {"eval": "evaluations on the dev data (each can write its docs/ section)",
          "lab": "research tools: encoder diagnosis, pairing without pairs, localisation"}
MOVED = {"evaluate": ("eval", "sweep"), "evaluate-unified": ("eval", "unified"),
         "evaluate-text-classifier": ("eval", "text-classifier"),
         "evaluate-qbnorm": ("eval", "qbnorm"), "evaluate-rerank": ("eval", "rerank"),
         "doctor": ("lab", "doctor"), "match": ("lab", "match"), "locate": ("lab", "locate")}
