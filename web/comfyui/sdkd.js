// ComfyUI front end: show the text each sdkd node returns in its "ui" result (where prune put the student,
// what inspect found) in a read-only box on the node, as ComfyUI's own Preview Any node does for its input.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

app.registerExtension({
    name: "sdkd.result_text",
    async beforeRegisterNodeDef(nodeType, nodeData) {
        if (!nodeData.name.startsWith("Sdkd")) return;
        const onNodeCreated = nodeType.prototype.onNodeCreated;
        nodeType.prototype.onNodeCreated = function () {
            onNodeCreated?.apply(this, []);
            const box = ComfyWidgets["STRING"](this, "sdkd_result", ["STRING", { multiline: true }], app).widget;
            box.element.readOnly = true;
            // A display, not an input: left out of saved workflows (serialize) and of the queued prompt (options.serialize).
            box.serialize = false;
            (box.options ??= {}).serialize = false;
        };
        const onExecuted = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (message) {
            onExecuted?.apply(this, [message]);
            const box = this.widgets?.find((w) => w.name === "sdkd_result");
            if (box && message?.text) box.value = message.text.join("\n");
        };
    },
});
