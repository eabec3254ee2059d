"""Branch-and-bound over sub-problems (input and neuron splitting) — arrives with the complete-verification work."""
