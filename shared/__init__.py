"""What the messenger and the workers must agree on: settings, models, events, keys, serializer, prices."""
