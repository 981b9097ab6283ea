"""The Dataspace Protocol 2025-1 HTTPS binding of a node: its own mutual-TLS listener
(`app`: catalog, negotiation and callback endpoints), the self-issued ID tokens that
authenticate each call (`auth`), the client that sends DSP messages (`client`) and the
consumer side that starts a negotiation with any DSP provider (`consumer`); the
transfer half: its routes and HTTP data plane (`transfers`), the moves over the
transfer state machine (`transfer_process`), the consumer's pulls and control
(`transfer_consumer`) and the data-plane tokens (`edr`). The state machines and the
runtime are the ones the gRPC wire uses; the JSON-LD forms are `connector.dsp_codec`,
`connector.dsp_negotiation` and `connector.dsp_transfer`, the data plane's bytes
`connector.dsp_data`."""
