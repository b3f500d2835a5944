export { NodeManager, type NodeInfo, type NodeManagerOptions } from "./node-manager.js";
export { attachModeError, chooseAttacher, probeMethods } from "./select.js";
export type { AttachMethod, AttachMode, Attacher, Attachment, ExportRef, KernelNode } from "./types.js";
