"""What a trial trains: the SED model, its loss, and the device-side input pipeline with its
augmentation."""
