export { eraTarget, EraTarget, type ChangedExtent } from "./target.js";
