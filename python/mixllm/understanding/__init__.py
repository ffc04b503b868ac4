"""Query understanding: domain tags (`tagging.py`, over the taxonomy of `taxonomy.py`), learned
clusters for data the taxonomy does not spread (`clustering.py`), the tag-enhanced projection
(`projection.py`) and how well two labelings agree (`agreement.py`)."""
