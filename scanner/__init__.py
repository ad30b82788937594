"""scanner: see DESIGN.md section 2."""
