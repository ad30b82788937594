"""ctwatch: see DESIGN.md section 2."""
