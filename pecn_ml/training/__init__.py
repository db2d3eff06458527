"""One module per trainer; training_step() kept apart from the loop; checkpoint helpers."""
