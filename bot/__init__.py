"""bot: see DESIGN.md section 2."""
