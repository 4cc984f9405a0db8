"""Running the pipeline: what a stage is and what it returns (`stage`), how a service describes
itself to the platform (`service`), the faust app with one thin agent per service (`app`), the
model processes (`compute`), and the worker that runs some or all services (`worker`)."""
