"""stepwatch's ComfyUI nodes: VerifierSelectionNode and InferenceScalingNode, on the engine.

:mod:`.nodes` (the V3 node classes and the extension entry point) and :mod:`.sampling` (the
monitored ``comfy.sample`` run) import ComfyUI and run only inside its Python; :mod:`.adapter`
(the one bridge to the engine), :mod:`.chart` and :mod:`.install` (``stepwatch
comfyui-install``) do not. Importing this package imports none of them.
"""
