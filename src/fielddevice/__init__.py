"""The reference field device (tablet): its own key and queue, pairing,
discovery, push and gather (``phs-field``)."""
