"""Russian text frontend: normalization, stress marks and the symbol table."""
