"""cnet: CentripetalNet and its ablations."""
