"""Query understanding: tags, domain taxonomy, clusters and the projection."""
