"""remediator: see DESIGN.md section 2."""
